//! Trust: the local CA's validity, the trust bundle holding it, and each
//! tagged unit: in the slice warrant redirects, with its TLS clients
//! pointed at the bundle.

use std::path::Path;

use jiff::Timestamp;

use super::{
    Check, Facts, Verdict,
    facts::{CaFacts, UnitFacts, UnitSettings},
};
use crate::install::{AGENTS_SLICE, DROPIN_NAME, TRUST_VARIABLES};

pub fn checks(facts: &Facts) -> Vec<Check> {
    // Without a config there is no state directory to look in; the config
    // check says why.
    if facts.config.is_none() {
        return Vec::new();
    }
    let mut checks = vec![ca(&facts.ca, facts.now)];
    checks.extend(bundle(&facts.ca));
    checks.extend(system_store(&facts.ca));
    let agents_slice_selected = facts.config.as_ref().is_some_and(|c| {
        c.workloads.iter().any(|w| {
            w.slice
                .as_ref()
                .is_some_and(|s| s.get_ref() == AGENTS_SLICE)
        })
    });
    for unit in &facts.units {
        checks.extend(unit_checks(
            unit,
            &facts.ca.bundle_path,
            agents_slice_selected,
        ));
    }
    checks
}

const RESTART_FIX: &str = "systemctl restart warrant (it issues a new CA and rewrites the trust bundle at start), then restart the tagged agents, and run warrant ca install again if the CA is in the system store";

/// The CA exists and is not near its end (the daemon reissues it at start
/// when less than `tls::CA_RENEW_BEFORE` is left).
pub fn ca(ca: &CaFacts, now: Timestamp) -> Check {
    const NAME: &str = "local CA";
    let path = ca.cert_path.display();
    let cert = match &ca.cert {
        Err(error) => {
            return Check::fail(NAME, format!("{path}: {error}"), RESTART_FIX);
        }
        Ok(None) => {
            return Check::warn(
                NAME,
                format!(
                    "{path} does not exist yet: the daemon creates the CA when it first starts"
                ),
                "systemctl start warrant",
            );
        }
        Ok(Some(cert)) => cert,
    };
    let left = cert.not_after.as_second() - now.as_second();
    let until = cert.not_after.strftime("%Y-%m-%d");
    let renew = i64::try_from(crate::tls::CA_RENEW_BEFORE.as_secs()).unwrap_or(i64::MAX);
    if left <= 0 {
        Check::fail(
            NAME,
            format!("expired on {until}: agents refuse every certificate warrant mints"),
            RESTART_FIX,
        )
    } else if left < renew {
        Check::warn(
            NAME,
            format!("expires on {until}, in {} days", left / 86_400),
            RESTART_FIX,
        )
    } else {
        Check::pass(
            NAME,
            format!("valid until {until} ({} days)", left / 86_400),
        )
    }
}

/// The trust bundle agents are pointed at holds the current CA.
pub fn bundle(ca: &CaFacts) -> Option<Check> {
    const NAME: &str = "trust bundle";
    let Ok(Some(cert)) = &ca.cert else {
        return None;
    };
    let path = ca.bundle_path.display();
    let fix = "systemctl restart warrant (it writes the bundle at start)";
    Some(match &ca.bundle {
        Err(error) => Check::fail(NAME, format!("{path}: {error}"), fix),
        Ok(None) => Check::fail(
            NAME,
            format!(
                "{path} does not exist: agents pointed at it cannot verify warrant's certificates"
            ),
            fix,
        ),
        Ok(Some(certs)) if !certs.contains(&cert.der) => Check::fail(
            NAME,
            format!(
                "{path} does not hold the current CA: agents pointed at it refuse warrant's certificates"
            ),
            fix,
        ),
        Ok(Some(certs)) => Check::pass(
            NAME,
            format!("{path} holds the CA ({} certificates in all)", certs.len()),
        ),
    })
}

/// When the CA was added to the system store, that copy is current.
pub fn system_store(ca: &CaFacts) -> Option<Check> {
    const NAME: &str = "system trust store";
    let installed = ca.system_store.as_ref()?;
    let Ok(Some(cert)) = &ca.cert else {
        return None;
    };
    Some(if installed == &cert.der {
        Check::pass(NAME, "holds the current CA (warrant ca install)")
    } else {
        Check::warn(
            NAME,
            "holds an older warrant CA: agents that use the system store refuse the current one",
            "warrant ca install",
        )
    })
}

/// A tagged unit's slice and TLS trust, and whether a workload selects it.
pub fn unit_checks(unit: &UnitFacts, bundle: &Path, agents_slice_selected: bool) -> Vec<Check> {
    let name = format!("unit {}", unit.unit);
    if let Some(show) = &unit.systemd
        && show.load_state == "not-found"
    {
        let (what, fix) = match &unit.selected_by {
            Some(workload) => (
                format!("workload {workload} selects it, but systemd has no such unit"),
                format!(
                    "correct unit = \"{}\" in [[workload]] {workload}",
                    unit.unit
                ),
            ),
            None => (
                "warrant's drop-in is there, but systemd has no such unit".to_owned(),
                format!("warrant untag {}", unit.unit),
            ),
        };
        return vec![Check::warn(name, what, fix)];
    }
    let settings = unit
        .systemd
        .as_ref()
        .map(|s| &s.settings)
        .or(unit.dropin.as_ref());
    let mut checks = Vec::new();
    if unit.dropin.is_some() {
        checks.push(slice(unit, settings, agents_slice_selected));
    }
    checks.push(trust(unit, settings, bundle));
    checks
}

fn slice(unit: &UnitFacts, settings: Option<&UnitSettings>, selected: bool) -> Check {
    let name = format!("unit {}: slice", unit.unit);
    let u = &unit.unit;
    if !selected {
        return Check::fail(
            name,
            format!(
                "tagged into {AGENTS_SLICE}, but no [[workload]] selects that slice: it is not redirected"
            ),
            format!(
                "add to the config:\n[[workload]]\nname = \"agents\"\nslice = \"{AGENTS_SLICE}\"\nthen: warrant reload"
            ),
        );
    }
    let ours = unit.dropin.as_ref();
    let configured = settings.and_then(|s| s.slice.as_deref());
    if configured != Some(AGENTS_SLICE) {
        return Check::fail(
            name,
            format!(
                "configured to run in {}, not {AGENTS_SLICE} (a later drop-in overrides warrant's)",
                configured.unwrap_or("the default slice")
            ),
            override_fix(
                u,
                ours.is_some_and(|d| d.slice.as_deref() == Some(AGENTS_SLICE)),
                "Slice=",
            ),
        );
    }
    match &unit.systemd {
        Some(show) if show.need_daemon_reload => Check::warn(
            name,
            "systemd has not read the unit's files since they changed",
            format!("systemctl daemon-reload && systemctl restart {u}"),
        ),
        Some(show)
            if show.active_state == "active"
                && !show.control_group.contains(&format!("/{AGENTS_SLICE}/")) =>
        {
            Check::warn(
                name,
                format!(
                    "running in {} since before it was tagged: not redirected until restarted",
                    show.control_group
                ),
                format!("systemctl restart {u}"),
            )
        }
        _ => Check::pass(name, format!("runs in {AGENTS_SLICE}")),
    }
}

fn trust(unit: &UnitFacts, settings: Option<&UnitSettings>, bundle: &Path) -> Check {
    let name = format!("unit {}: TLS trust", unit.unit);
    let u = &unit.unit;
    let bundle_text = bundle.display().to_string();
    let value = |var: &str| {
        settings.and_then(|s| {
            s.environment
                .iter()
                .rev()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.as_str())
        })
    };
    let mut wrong = Vec::new();
    for var in TRUST_VARIABLES {
        match value(var) {
            Some(v) if v == bundle_text => {}
            Some(v) => wrong.push(format!("{var}={v}")),
            None => wrong.push(format!("{var} unset")),
        }
    }
    let fix = if let Some(ours) = &unit.dropin {
        let intact = TRUST_VARIABLES.iter().all(|var| {
            ours.environment
                .iter()
                .rev()
                .find(|(k, _)| k == var)
                .is_some_and(|(_, v)| *v == bundle_text)
        });
        override_fix(u, intact, "Environment=")
    } else {
        let lines: Vec<String> = TRUST_VARIABLES
            .iter()
            .map(|var| format!("Environment={var}={bundle_text}"))
            .collect();
        format!(
            "systemctl edit {u}, add under [Service]:\n{}\nthen systemctl restart {u}",
            lines.join("\n")
        )
    };
    let verdict = match wrong.len() {
        0 => Verdict::Pass,
        n if n == TRUST_VARIABLES.len() => Verdict::Fail,
        _ => Verdict::Warn,
    };
    match verdict {
        Verdict::Pass => Check::pass(
            name,
            format!("{} point at {bundle_text}", TRUST_VARIABLES.join(", ")),
        ),
        Verdict::Warn => Check::warn(
            name,
            format!(
                "TLS clients that read {} will not trust warrant's CA",
                wrong.join(", ")
            ),
            fix,
        ),
        Verdict::Fail => Check::fail(
            name,
            format!(
                "no trust variable points at {bundle_text} ({}): its TLS clients refuse warrant's certificates",
                wrong.join(", ")
            ),
            fix,
        ),
    }
}

/// The fix when systemd's view of tagged unit `u` differs from warrant's
/// drop-in. Rewriting the drop-in (`warrant tag`) helps only when the
/// drop-in itself was edited or is stale; when it is intact, a drop-in
/// that sorts after it sets `setting` (systemd applies drop-ins in file
/// name order, the last assignment winning), and only removing that line
/// does.
fn override_fix(u: &str, ours_intact: bool, setting: &str) -> String {
    if ours_intact {
        format!(
            "a drop-in read after warrant's {DROPIN_NAME} sets {setting}: find it with systemctl cat {u}, remove that {setting} line, then systemctl daemon-reload && systemctl restart {u}"
        )
    } else {
        format!("warrant tag {u} && systemctl restart {u}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::{CaCert, UnitShow, parse_dropin};

    const BUNDLE: &str = "/var/lib/warrant/trust-bundle.pem";

    fn tagged(text: &str) -> UnitFacts {
        UnitFacts {
            unit: "agent.service".into(),
            dropin: Some(parse_dropin(text)),
            ..UnitFacts::default()
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or_default()
    }

    fn facts(days_left: i64, bundle: Option<Vec<Vec<u8>>>) -> CaFacts {
        CaFacts {
            cert_path: "/var/lib/warrant/ca.pem".into(),
            cert: Ok(Some(CaCert {
                der: vec![1, 2, 3],
                not_after: Timestamp::from_second(now().as_second() + days_left * 86_400)
                    .unwrap_or_default(),
            })),
            bundle_path: BUNDLE.into(),
            bundle: Ok(bundle),
            system_store: None,
        }
    }

    #[test]
    fn a_ca_near_its_end_warns_an_expired_one_fails_and_the_bundle_must_hold_it() {
        assert_eq!(ca(&facts(400, None), now()).verdict, Verdict::Pass);
        let near = ca(&facts(10, None), now());
        assert_eq!(near.verdict, Verdict::Warn);
        assert!(near.detail.contains("in 10 days"), "{}", near.detail);
        assert!(
            near.fix
                .unwrap_or_default()
                .starts_with("systemctl restart warrant")
        );
        assert_eq!(ca(&facts(-1, None), now()).verdict, Verdict::Fail);
        let missing = bundle(&facts(400, None)).unwrap_or_else(|| Check::pass("", ""));
        assert_eq!(missing.verdict, Verdict::Fail);
        let stale = bundle(&facts(400, Some(vec![vec![9]]))).unwrap_or_else(|| Check::pass("", ""));
        assert_eq!(stale.verdict, Verdict::Fail);
        assert!(stale.detail.contains("does not hold the current CA"));
        let good = bundle(&facts(400, Some(vec![vec![9], vec![1, 2, 3]])));
        assert_eq!(good.map(|c| c.verdict), Some(Verdict::Pass));
        let mut installed = facts(400, None);
        installed.system_store = Some(vec![7]);
        assert_eq!(
            system_store(&installed).map(|c| c.fix),
            Some(Some("warrant ca install".into()))
        );
    }

    #[test]
    fn a_tagged_unit_with_warrants_drop_in_passes() {
        let dropin = crate::install::dropin_text(Path::new(BUNDLE));
        let checks = unit_checks(&tagged(&dropin), Path::new(BUNDLE), true);
        assert_eq!(checks.len(), 2);
        assert!(
            checks.iter().all(|c| c.verdict == Verdict::Pass),
            "{checks:#?}"
        );
    }

    #[test]
    fn a_unit_whose_trust_variables_point_elsewhere_is_named_with_the_fix() {
        let show = UnitShow {
            load_state: "loaded".into(),
            active_state: "active".into(),
            settings: parse_dropin(
                "Slice=warrant-agents.slice\nEnvironment=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n",
            ),
            control_group: "/warrant-agents.slice/agent.service".into(),
            need_daemon_reload: false,
        };
        let unit = UnitFacts {
            systemd: Some(show),
            ..tagged("Slice=warrant-agents.slice\n")
        };
        let checks = unit_checks(&unit, Path::new(BUNDLE), true);
        let trust = &checks[1];
        assert_eq!(trust.verdict, Verdict::Fail);
        assert!(
            trust
                .detail
                .contains("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
            "{}",
            trust.detail
        );
        assert!(trust.detail.contains("NODE_EXTRA_CA_CERTS unset"));
        // warrant's drop-in lost its lines: writing it again is the fix.
        assert_eq!(
            trust.fix.as_deref(),
            Some("warrant tag agent.service && systemctl restart agent.service")
        );
        // warrant's drop-in is intact and a later one overrides it: `warrant
        // tag` would change nothing, so the fix is to remove that line.
        let ours = crate::install::dropin_text(Path::new(BUNDLE));
        let overridden = UnitFacts {
            dropin: Some(parse_dropin(&ours)),
            systemd: Some(UnitShow {
                settings: parse_dropin(&format!(
                    "{ours}Environment=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n"
                )),
                ..unit.systemd.clone().unwrap()
            }),
            ..unit.clone()
        };
        let checks = unit_checks(&overridden, Path::new(BUNDLE), true);
        assert_eq!(
            checks[1].verdict,
            Verdict::Warn,
            "three of four still point at it"
        );
        assert_eq!(
            checks[1].fix.as_deref(),
            Some(
                "a drop-in read after warrant's 50-warrant.conf sets Environment=: find it with systemctl cat agent.service, remove that Environment= line, then systemctl daemon-reload && systemctl restart agent.service"
            )
        );
        // Selected by unit = (no drop-in): the fix is the lines to add.
        let selected = UnitFacts {
            dropin: None,
            selected_by: Some("support".into()),
            ..unit
        };
        let checks = unit_checks(&selected, Path::new(BUNDLE), true);
        assert_eq!(checks.len(), 1, "no slice check without warrant's drop-in");
        let fix = checks[0].fix.clone().unwrap_or_default();
        assert!(
            fix.contains(&format!("Environment=SSL_CERT_FILE={BUNDLE}")),
            "{fix}"
        );
    }

    #[test]
    fn a_running_unit_outside_the_slice_or_an_unselected_slice_is_named() {
        let dropin = crate::install::dropin_text(Path::new(BUNDLE));
        let running = UnitFacts {
            systemd: Some(UnitShow {
                load_state: "loaded".into(),
                active_state: "active".into(),
                settings: parse_dropin(&dropin),
                control_group: "/system.slice/agent.service".into(),
                need_daemon_reload: false,
            }),
            ..tagged(&dropin)
        };
        let checks = unit_checks(&running, Path::new(BUNDLE), true);
        assert_eq!(checks[0].verdict, Verdict::Warn);
        assert_eq!(
            checks[0].fix.as_deref(),
            Some("systemctl restart agent.service")
        );
        let unselected = unit_checks(&tagged(&dropin), Path::new(BUNDLE), false);
        assert_eq!(unselected[0].verdict, Verdict::Fail);
        assert!(
            unselected[0]
                .fix
                .clone()
                .unwrap_or_default()
                .contains("slice = \"warrant-agents.slice\"")
        );
    }
}
