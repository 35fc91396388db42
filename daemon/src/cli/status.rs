//! `warrant status` for people: the daemon's [`Status`] as aligned tables
//! and sentences. `--json` prints the same value as the daemon sent it
//! (see `control::status` for the fields).

use jiff::Timestamp;

use crate::table::{Table, count, dollars, relative, span};
use crate::{
    attest::InstanceState,
    audit::Target,
    control::status::Status,
    credentials::CredentialStatus,
    redirect::tagging::TaggerStatus,
    response::{Quarantine, live::ConnectionInfo},
    usage::{BudgetLine, BudgetStatus, Room, window::Series},
};

/// The whole status, as `warrant status` prints it at `now`.
pub fn render(status: &Status, now: Timestamp) -> String {
    let mut out = format!("warrant {}\n", status.version);
    section(&mut out, "WORKLOADS (live connections)", workloads(status));
    section(
        &mut out,
        "CONNECTIONS",
        connections(&status.connections, now),
    );
    section(
        &mut out,
        "CREDENTIALS",
        credentials(&status.credentials, now),
    );
    out.push_str(&budgets(status.budgets.as_ref()));
    out.push_str("INSTANCE\n");
    out.push_str(&instance(status.instance.as_ref(), now));
    if let Some(tagging) = &status.tagging {
        out.push_str("TAGGING\n");
        out.push_str(&format!("  {}\n", tagger(tagging)));
    }
    section(
        &mut out,
        "QUARANTINES",
        quarantines(&status.quarantines, now),
    );
    out.push_str("AUDIT\n");
    out.push_str(&format!("  {}\n", status.audit.in_words()));
    if let Some(kernel) = &status.kernel {
        out.push_str(&render_kernel(kernel));
    }
    out
}

/// A JSON value as a table cell ("-" for none).
fn text(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// The kernel's hooks as a table, then every feature that is not simply
/// present, with the probe's reason and fix (`warrant doctor` checks them
/// all).
fn render_kernel(kernel: &serde_json::Value) -> String {
    use serde_json::Value;
    let mut out = format!("KERNEL {}\n", text(kernel.get("release")));
    let mut hooks = Table::with_headers(&["HOOK", "STATE", "VIA", "NOTE"]);
    for (name, hook) in kernel
        .get("hooks")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let attached = hook.get("attached").and_then(Value::as_bool) == Some(true);
        hooks.row(vec![
            name.clone(),
            if attached { "attached" } else { "ABSENT" }.to_owned(),
            text(hook.get("via")),
            text(hook.get("note")),
        ]);
    }
    if !hooks.is_empty() {
        out.push_str(&hooks.render());
    }
    for feature in kernel
        .get("features")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| f.get("state").and_then(Value::as_str) != Some("present"))
    {
        out.push_str(&format!(
            "  {} {}: {}{}\n",
            text(feature.get("feature")),
            text(feature.get("state")),
            text(feature.get("detail")),
            feature
                .get("fix")
                .and_then(Value::as_str)
                .map(|f| format!("; fix: {f}"))
                .unwrap_or_default()
        ));
    }
    out
}

fn section(out: &mut String, title: &str, table: Table) {
    out.push_str(title);
    out.push('\n');
    if table.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table.render());
    }
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn workloads(status: &Status) -> Table {
    let mut table = Table::with_headers(&["WORKLOAD", "CONNECTIONS", "REQUESTS"]);
    for (name, activity) in &status.workloads {
        table.row(vec![
            name.clone(),
            count(activity.connections),
            count(activity.requests),
        ]);
    }
    table
}

fn connections(connections: &[ConnectionInfo], now: Timestamp) -> Table {
    let mut table = Table::with_headers(&[
        "ID", "PID", "UID", "KIND", "UPSTREAM", "WORKLOAD", "REQUESTS", "SINCE",
    ]);
    for c in connections {
        let kind = serde_json::to_value(c.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        table.row(vec![
            format!("#{}", c.id),
            c.tgid.to_string(),
            c.uid.to_string(),
            kind,
            c.upstream
                .clone()
                .unwrap_or_else(|| c.original_dst.to_string()),
            or_dash(c.workload.as_deref()),
            count(c.requests),
            relative(c.since, now),
        ]);
    }
    table
}

fn credentials(credentials: &[CredentialStatus], now: Timestamp) -> Table {
    let mut table = Table::with_headers(&[
        "CREDENTIAL",
        "FINGERPRINT",
        "EXPIRES",
        "REFRESH",
        "FAILURES",
        "LAST ERROR",
    ]);
    let when = |t: Option<Timestamp>| t.map_or_else(|| "-".to_owned(), |t| relative(t, now));
    for c in credentials {
        let refresh = match (c.retry_at, c.refresh_at) {
            (Some(retry), _) if c.failures > 0 => format!("retry {}", relative(retry, now)),
            (_, refresh) => when(refresh),
        };
        table.row(vec![
            c.name.clone(),
            c.fingerprint
                .clone()
                .unwrap_or_else(|| "(not fetched)".to_owned()),
            when(c.expires_at),
            refresh,
            c.failures.to_string(),
            or_dash(c.last_error.as_deref()),
        ]);
    }
    table
}

fn budgets(budgets: Option<&BudgetStatus>) -> String {
    let Some(b) = budgets else {
        return "BUDGETS\n  (this daemon keeps no budgets)\n".to_owned();
    };
    let mut out = format!("BUDGETS ({})\n", ledger(b));
    let mut notes = Vec::new();
    notes.push(format!(
        "{} responses metered: {} counted, {} usage unknown (charged as reserved), {} cut off, {} error responses; {} requests refused over budget",
        count(b.responses),
        count(b.counted),
        count(b.unknown),
        count(b.cut_off),
        count(b.error_responses),
        count(b.over_budget)
    ));
    if b.recovered_in_flight > 0 {
        notes.push(format!(
            "{} requests were in flight when warrant last stopped: charged as reserved",
            count(b.recovered_in_flight)
        ));
    }
    if b.ledger_write_errors > 0 {
        notes.push(format!(
            "{} ledger writes FAILED: budgets are enforced from memory and will not survive a restart",
            count(b.ledger_write_errors)
        ));
    }
    if b.ledger_unavailable > 0 {
        notes.push(format!(
            "{} requests refused because the shared ledger was unreachable",
            count(b.ledger_unavailable)
        ));
    }
    for note in notes {
        out.push_str(&format!("  {note}\n"));
    }
    let mut table = Table::with_headers(&[
        "WORKLOAD",
        "RULE",
        "BUDGET",
        "LIMIT",
        "USED",
        "IN FLIGHT",
        "ROOM FOR A DEFAULT REQUEST",
    ]);
    for line in &b.lines {
        table.row(budget_row(line));
    }
    if table.is_empty() {
        out.push_str("  (no [[policy]] rule sets a budget)\n");
    } else {
        out.push_str(&table.render());
    }
    out
}

fn ledger(b: &BudgetStatus) -> String {
    match (b.ledger.as_ref(), b.redis_reachable) {
        ("redis", Some(false)) if b.local_fallback_active => {
            "ledger: redis UNREACHABLE, budgets are per host until it is back".to_owned()
        }
        ("redis", Some(false)) => {
            "ledger: redis UNREACHABLE, budgeted requests are refused until it is back".to_owned()
        }
        ("redis", _) => "ledger: redis, shared by the fleet".to_owned(),
        ("sqlite", _) => "ledger: sqlite in the state directory".to_owned(),
        (other, _) => format!("ledger: {other}"),
    }
}

fn budget_row(line: &BudgetLine) -> Vec<String> {
    let amount = |n: u64| match line.budget {
        Series::CostPerDay => dollars(n),
        _ => count(n),
    };
    let maybe = |n: Option<u64>| n.map_or_else(|| "(in redis)".to_owned(), amount);
    let room = match line.room {
        Room::Now => "now".to_owned(),
        Room::After { secs } => format!("in {}", span(secs)),
        Room::Never => format!(
            "never: the limit is below one request ({})",
            amount(line.default_request)
        ),
        Room::Unknown => "(in redis)".to_owned(),
    };
    let who = if line.key == line.workload {
        line.workload.clone()
    } else {
        line.key.clone()
    };
    vec![
        who,
        format!("#{}", line.rule + 1),
        serde_json::to_value(line.budget)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        amount(line.limit),
        maybe(line.used),
        maybe(line.in_flight),
        room,
    ]
}

fn instance(instance: Option<&InstanceState>, now: Timestamp) -> String {
    let at = |unix: u64| {
        Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX))
            .map_or_else(|_| "?".to_owned(), |t| relative(t, now))
    };
    match instance {
        None => "  (not part of this daemon)\n".to_owned(),
        Some(InstanceState::Pending) => {
            "  not attested yet (the daemon attests the instance before it accepts connections)\n"
                .to_owned()
        }
        Some(InstanceState::Failed {
            provider,
            reason,
            at_unix,
        }) => format!(
            "  FAILED ({provider}, {}): {reason}\n  conditions that need the identity (environments, regions) fail closed\n",
            at(*at_unix)
        ),
        Some(InstanceState::Attested {
            provider,
            verified,
            claims,
            fetched_at_unix,
            ..
        }) => {
            let trust = if *verified {
                "signature verified"
            } else {
                "UNVERIFIED (no trust configured): conditions on its claims fail closed"
            };
            let mut out = format!(
                "  attested by {provider}, {trust}, fetched {}\n",
                at(*fetched_at_unix)
            );
            let mut table = Table::with_headers(&["CLAIM", "VALUE"]);
            for (name, value) in claims {
                table.row(vec![name.clone(), value.clone()]);
            }
            if !table.is_empty() {
                out.push_str(&indent(&table.render()));
            }
            out
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn quarantines(quarantines: &[Quarantine], now: Timestamp) -> Table {
    let mut table = Table::with_headers(&["TARGET", "BY", "SINCE", "UNTIL", "REASON"]);
    for q in quarantines {
        let target = match &q.target {
            Target::Workload(name) => format!("workload {name}"),
            Target::Pid(pid) => format!("pid {pid}"),
        };
        table.row(vec![
            target,
            q.actor.clone(),
            relative(q.since, now),
            q.until
                .map_or_else(|| "until restored".to_owned(), |u| relative(u, now)),
            q.reason.clone(),
        ]);
    }
    table
}

/// The tagger's health in one sentence: whether every cgroup a selector
/// names is tagged (an untagged one is not redirected, so its agents' TLS
/// connections go straight out, or fail if egress is filtered).
pub fn tagger(t: &TaggerStatus) -> String {
    let last = t
        .last_error
        .as_deref()
        .map(|e| format!("; last error: {e}"))
        .unwrap_or_default();
    let counts = format!(
        "{} cgroups tagged of capacity {}, {} errors since start",
        count(t.tagged as u64),
        count(t.capacity as u64),
        count(t.errors)
    );
    if t.healthy {
        format!("healthy: every cgroup the selectors name is tagged; {counts}{last}")
    } else {
        format!(
            "FAILING: {} cgroups the selectors name are NOT tagged (not redirected); {counts}{last}",
            count(t.untagged as u64)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::sample;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap_or_default()
    }

    /// The lines of `text` under `title`, up to the next section.
    fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
        text.lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .collect()
    }

    #[test]
    fn budgets_read_one_line_per_workload_and_budget_with_limit_used_in_flight_and_room() {
        let text = render(&sample(now()), now());
        let budgets = section(&text, "BUDGETS");
        assert!(budgets[0].contains("1,234 responses metered"), "{text}");
        assert!(
            budgets
                .iter()
                .any(|l| l.contains("2 requests were in flight when warrant last stopped"))
        );
        assert!(budgets.iter().any(|l| l.contains("ledger writes FAILED")));
        let header = budgets
            .iter()
            .position(|l| l.contains("ROOM FOR A DEFAULT REQUEST"))
            .unwrap_or(0);
        let rows = &budgets[header + 1..];
        assert_eq!(rows.len(), 3, "{text}");
        let tokens = rows
            .iter()
            .find(|l| l.contains("tokens_per_hour"))
            .copied()
            .unwrap_or("");
        let words: Vec<&str> = tokens.split_whitespace().collect();
        assert_eq!(
            &words[1..],
            ["#1", "tokens_per_hour", "200,000", "8,243", "4,926", "now"]
        );
        let requests = rows
            .iter()
            .find(|l| l.contains("requests_per_minute"))
            .copied()
            .unwrap_or("");
        assert!(requests.ends_with("in 41 s"), "{requests}");
        let cost = rows
            .iter()
            .find(|l| l.contains("cost_per_day_usd"))
            .copied()
            .unwrap_or("");
        assert!(
            cost.contains("$50.00") && cost.contains("$12.34") && cost.contains("$0.50"),
            "{cost}"
        );
        // Aligned: every column starts where its header does.
        let at = |line: &str, word: &str| line.find(word);
        assert_eq!(at(budgets[header], "LIMIT"), at(tokens, "200,000"));
        assert_eq!(at(budgets[header], "LIMIT"), at(requests, "60"));
    }

    #[test]
    fn a_long_claim_name_does_not_run_into_its_value_and_identity_and_audit_read_as_words() {
        let text = render(&sample(now()), now());
        let instance = section(&text, "INSTANCE");
        assert!(
            instance[0].contains("attested by host, signature verified, fetched 2 h ago"),
            "{text}"
        );
        let claim = instance
            .iter()
            .find(|l| l.contains("host_key_ed25519"))
            .copied()
            .unwrap_or("");
        let region = instance
            .iter()
            .find(|l| l.contains("region"))
            .copied()
            .unwrap_or("");
        assert!(claim.contains("host_key_ed25519  3862c0ffee"), "{claim}");
        assert_eq!(claim.find("3862"), region.find("us-east-1"), "{text}");
        let audit = section(&text, "AUDIT");
        assert!(
            audit[0].contains("healthy: writing to /var/log/warrant/audit.jsonl and the journal"),
            "{text}"
        );
        assert!(audit[0].contains("1,234 records written, 0 dropped"));
        let mut status = sample(now());
        status.audit.writable = false;
        status.audit.dropped = 12;
        let text = render(&status, now());
        assert!(
            text.contains("NOT WRITABLE") && text.contains("REFUSED"),
            "{text}"
        );
        let tagging = section(&text, "TAGGING");
        assert!(
            tagging[0].starts_with("  healthy: every cgroup the selectors name is tagged; 3 cgroups tagged of capacity 4,096"),
            "{text}"
        );
        if let Some(t) = status.tagging.as_mut() {
            t.healthy = false;
            t.untagged = 2;
            t.last_error = Some("map full".into());
        }
        let text = render(&status, now());
        assert!(
            section(&text, "TAGGING")[0]
                .contains("FAILING: 2 cgroups the selectors name are NOT tagged")
                && text.contains("last error: map full"),
            "{text}"
        );
        status.instance = Some(InstanceState::Failed {
            provider: "aws".into(),
            reason: "IMDSv2 token request timed out".into(),
            at_unix: 1_800_000_000 - 60,
        });
        let text = render(&status, now());
        assert!(
            text.contains("FAILED (aws, 1 min ago): IMDSv2 token request timed out"),
            "{text}"
        );
    }

    #[test]
    fn other_sections_are_tables_with_relative_times() {
        let text = render(&sample(now()), now());
        let credentials = section(&text, "CREDENTIALS");
        assert!(credentials[1].contains("openai-prod"), "{text}");
        assert!(credentials[1].contains("in 1 h") && credentials[1].contains("retry in 30 s"));
        let quarantines = section(&text, "QUARANTINES");
        assert!(quarantines[1].contains("5 min ago") && quarantines[1].contains("rule deny_burst"));
        let connections = section(&text, "CONNECTIONS");
        assert!(connections[1].contains("intercepted") && connections[1].contains("1 min ago"));
        let mut empty = sample(now());
        empty.connections.clear();
        empty.budgets = None;
        let text = render(&empty, now());
        assert_eq!(section(&text, "CONNECTIONS"), ["  (none)"]);
        assert!(text.contains("this daemon keeps no budgets"));
    }
}
