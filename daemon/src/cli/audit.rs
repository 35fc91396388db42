//! `warrant audit`: the audit trail, filtered, as a table of records or a
//! summary per workload and day; JSON with `--json`. Reading is
//! `audit::query`'s; this is the command line and the rendering.

use std::{path::PathBuf, process::ExitCode};

use jiff::Timestamp;

use crate::audit::{
    AuditRecord, Outcome, RecordKind, Target,
    query::{self, DaySummary, Entry, Filter, Trail},
};
use crate::table::{Table, count, usd};

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The audit log to read (default: the config's [daemon] audit_log);
    /// its rotated files (FILE.1, FILE.2, ..., also .gz) are read too.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The config that names the audit log.
    #[arg(long, default_value = "/etc/warrant/warrant.toml")]
    pub config: PathBuf,
    /// Only this workload's records.
    #[arg(long)]
    pub workload: Option<String>,
    /// Only requests with this outcome (repeatable).
    #[arg(long, value_enum)]
    pub outcome: Vec<OutcomeArg>,
    /// Only refusals: requests refused (by policy, budget, quarantine, an
    /// agent key, the injector, the audit log) and refused connections.
    #[arg(long)]
    pub refused: bool,
    /// Only requests to this upstream host.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Only requests for a model matching this glob (e.g. 'gpt-4o*').
    #[arg(long)]
    pub model: Option<String>,
    /// From (inclusive): 2026-12-01T09:30:00Z, a UTC day (2026-12-01),
    /// today, yesterday, or a span ago (30m, 24h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Until (exclusive), in the same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Sum requests per workload and UTC day: requests, refusals by
    /// reason, tokens, cost.
    #[arg(long)]
    pub summary: bool,
    /// Only the last N matching records.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// JSON: one record per line as written, or the summary as an array.
    #[arg(long)]
    pub json: bool,
}

/// The outcomes a request can have (the audit record's `outcome`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OutcomeArg {
    Forwarded,
    PassedThrough,
    Emulated,
    Denied,
    Quarantined,
    AgentKey,
    Refused,
    NoCredential,
    UpstreamError,
    AuditUnavailable,
    Aborted,
}

impl From<OutcomeArg> for Outcome {
    fn from(arg: OutcomeArg) -> Outcome {
        match arg {
            OutcomeArg::Forwarded => Outcome::Forwarded,
            OutcomeArg::PassedThrough => Outcome::PassedThrough,
            OutcomeArg::Emulated => Outcome::Emulated,
            OutcomeArg::Denied => Outcome::Denied,
            OutcomeArg::Quarantined => Outcome::Quarantined,
            OutcomeArg::AgentKey => Outcome::AgentKey,
            OutcomeArg::Refused => Outcome::Refused,
            OutcomeArg::NoCredential => Outcome::NoCredential,
            OutcomeArg::UpstreamError => Outcome::UpstreamError,
            OutcomeArg::AuditUnavailable => Outcome::AuditUnavailable,
            OutcomeArg::Aborted => Outcome::Aborted,
        }
    }
}

/// Runs the command: 0 when the trail was read (even with no match).
pub fn run(args: &AuditArgs) -> ExitCode {
    match query_trail(args) {
        Ok((trail, filter)) => {
            print!("{}", render(args, &trail, &filter));
            report_unreadable(&trail);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("warrant audit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn query_trail(args: &AuditArgs) -> anyhow::Result<(Trail, Filter)> {
    let file = match &args.file {
        Some(file) => file.clone(),
        None => super::load_or_default(&args.config)?.daemon.audit_log,
    };
    if file.as_os_str().is_empty() {
        anyhow::bail!(
            "the config sets no audit file (audit_log = \"\"); records went to the journal only: journalctl -t warrant-audit -o cat"
        );
    }
    let filter = filter(args, Timestamp::now())?;
    Ok((query::read(&file)?, filter))
}

/// The filter the arguments ask for, with times relative to `now`.
pub fn filter(args: &AuditArgs, now: Timestamp) -> anyhow::Result<Filter> {
    let time = |text: &Option<String>| {
        text.as_deref()
            .map(|t| query::parse_time(t, now))
            .transpose()
    };
    let model = match &args.model {
        Some(glob) => Some(globset::Glob::new(glob)?.compile_matcher()),
        None => None,
    };
    Ok(Filter {
        workload: args.workload.clone(),
        outcomes: args.outcome.iter().map(|&o| o.into()).collect(),
        refused: args.refused,
        upstream: args.upstream.clone(),
        model,
        since: time(&args.since)?,
        until: time(&args.until)?,
    })
}

/// What the command prints for `trail` under `filter`.
pub fn render(args: &AuditArgs, trail: &Trail, filter: &Filter) -> String {
    let mut matching: Vec<&Entry> = trail.entries.iter().filter(|e| filter.matches(e)).collect();
    if args.summary {
        let summary = query::summarize(matching);
        return if args.json {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&summary).unwrap_or_default()
            )
        } else {
            summary_table(&summary)
        };
    }
    if let Some(last) = args.last {
        matching = matching.split_off(matching.len().saturating_sub(last));
    }
    if args.json {
        return matching
            .iter()
            .map(|e| format!("{}\n", e.record.to_line()))
            .collect();
    }
    records_table(&matching)
}

fn report_unreadable(trail: &Trail) {
    if trail.unreadable > 0 {
        eprintln!(
            "warrant audit: {} line(s) could not be read (first at {}); they are left out",
            trail.unreadable,
            trail.unreadable_at.join(", ")
        );
    }
}

fn records_table(entries: &[&Entry]) -> String {
    if entries.is_empty() {
        return "no matching records\n".to_owned();
    }
    let mut table = Table::with_headers(&[
        "TIME", "WORKLOAD", "OUTCOME", "STATUS", "UPSTREAM", "MODEL", "TOKENS", "COST", "WHY",
    ]);
    for entry in entries {
        table.row(record_row(entry));
    }
    table.render()
}

fn record_row(entry: &Entry) -> Vec<String> {
    let r = &entry.record;
    let dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let tokens = r.usage.as_ref().map_or_else(
        || "-".to_owned(),
        |u| {
            format!(
                "{} in, {} out",
                count(u.input_tokens.unwrap_or(0)),
                count(u.output_tokens.unwrap_or(0))
            )
        },
    );
    let cost = r
        .usage
        .as_ref()
        .and_then(|u| u.cost_usd)
        .map_or_else(|| "-".to_owned(), usd);
    vec![
        entry.time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        dash(query::workload_of(r)),
        what(r),
        r.status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        dash(r.upstream.as_deref()),
        dash(r.model.as_deref()),
        tokens,
        cost,
        why(r),
    ]
}

/// The record's outcome, or its kind when it is not a request.
fn what(r: &AuditRecord) -> String {
    match (r.kind, r.outcome) {
        (RecordKind::Request, Some(outcome)) => outcome.as_str().to_owned(),
        (kind, _) => serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

/// Why it ended as it did: the refusal's reason and message, who
/// quarantined, the message of anything else.
fn why(r: &AuditRecord) -> String {
    let message = r.message.as_deref().unwrap_or("");
    match (r.kind, r.refusal_reason()) {
        (RecordKind::Quarantine, _) => {
            let target = match &r.target {
                Some(Target::Workload(w)) => format!("workload {w}"),
                Some(Target::Pid(pid)) => format!("pid {pid}"),
                None => "?".to_owned(),
            };
            format!(
                "{target} by {}: {message}",
                r.actor.as_deref().unwrap_or("?")
            )
        }
        (_, Some(reason)) if message.is_empty() => reason,
        (_, Some(reason)) => format!("{reason}: {message}"),
        _ => message.to_owned(),
    }
}

fn summary_table(days: &[DaySummary]) -> String {
    if days.is_empty() {
        return "no matching requests\n".to_owned();
    }
    let mut table = Table::with_headers(&[
        "DAY (UTC)",
        "WORKLOAD",
        "REQUESTS",
        "FORWARDED",
        "REFUSED",
        "FAILED",
        "INPUT TOKENS",
        "OUTPUT TOKENS",
        "COST",
    ]);
    for day in days {
        let refused: u64 = day.refused.values().sum();
        let reasons: Vec<String> = day
            .refused
            .iter()
            .map(|(reason, n)| format!("{reason} {}", count(*n)))
            .collect();
        table.row(vec![
            day.day.clone(),
            day.workload.clone(),
            count(day.requests),
            count(day.forwarded),
            if refused == 0 {
                "0".to_owned()
            } else {
                format!("{} ({})", count(refused), reasons.join(", "))
            },
            count(day.failed),
            count(day.input_tokens),
            count(day.output_tokens),
            usd(day.cost_usd),
        ]);
    }
    table.render()
}
